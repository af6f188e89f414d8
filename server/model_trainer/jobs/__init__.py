"""The queue and worker side: what the API enqueues and the worker runs.

    queue.py             the JobQueue boundary (the only module the API imports from here,
                         with payloads.py): job kinds, RQ adapter
    payloads.py          what a job receives, validated by the API and again by the job
    context.py           the worker's services (settings, connections, stores)
    ownership.py         the one life every job kind shares: lease, fenced writes, how an
                         attempt ends (failures.py: which failures are retried)
    reaper.py            every worker's pass that keeps jobs from getting stuck
    artifacts.py         Data Bank steps jobs share: fetch a corpus or artifact, publish one
    tokenizer_training.py, model_training.py, model_evaluation.py   one module per job kind
    worker.py            `modeltrainer-rq-worker`, the process that runs them

Job modules import torch; the API never imports them (jobs are named by dotted path).
"""
