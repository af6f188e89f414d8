"""Webhooks: a POST to each of a job's endpoints when it ends, signed as Standard Webhooks says.

    addresses.py  which URLs may be called: http(s), and no private or loopback address unless
                  the operator allows them (no server-side request forgery)
    records.py    what Redis keeps: a job's endpoints, the deliveries and their attempts
    sender.py     the loop each API process runs: turn ended jobs into deliveries, send
                  what is due, retry on the schedule (about a day), record each attempt

A job's endpoints are its request's `webhook_url` (with its secret) and the operator's
`WEBHOOKS__ENDPOINTS`. Ending a job (whoever ends it) adds it to `trainer:webhooks:ended` in
the same write as its status (store/records.py); everything after that lives in Redis, so
deliveries survive any worker's or API's restart (the API, not the worker, sends: a
worker forks its jobs, and a thread beside a fork risks a child that inherits a held lock).
Delivery is at least once: a receiver deduplicates on `webhook-id`, which stays the same on
every attempt of one delivery.
"""
