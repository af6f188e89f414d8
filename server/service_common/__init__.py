"""What the trainer (`model_trainer`) and the local Data Bank server (`databank_server`) share.

They are two services: neither imports the other. The few things both must do the same way
live here rather than being copied, so they cannot drift apart:

jsonlog.py            JSON-lines logging and the request/run/tokenizer id context
request_id.py         X-Request-ID echoed (or made), the access log, the last-resort 500
error_bodies.py       the `{code, message, request_id}` error body, its FastAPI handlers and
                      install_error_bodies(app, vocabulary): one service's codes in, the
                      middleware and handlers installed
service_error.py      ServiceError, the exception those handlers answer (no web imports)
databank_contract.py  the Data Bank wire contract (data-bank-api.md) both sides speak
docs_page.py          `/docs` without a CDN: a page of our own rendering the OpenAPI document
static_assets.py      how those pages (and the API's dashboard) are served: ETag, CSP, nosniff

Keep it this small: anything only one service uses belongs to that service.
"""
