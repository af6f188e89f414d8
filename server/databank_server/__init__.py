"""The local Data Bank: a file server speaking data-bank-api.md, for local runs and tests.

A different service from the trainer (`model_trainer`), which it never imports: the two meet
only over HTTP, through the contract in `service_common.databank_contract`.

server.py    the app (routes, API keys, ranges) and the process (`python -m databank_server`)
errors.py    the contract's error codes on the shared error body and request-id middleware
storage.py   FileStore: content-addressed bytes with their FileInfo beside them on disk
upload.py    POST /files received as a stream: hashed, size-capped, into a temp file
ranges.py    the one Range form the contract serves (`bytes=a-b`, `bytes=a-`)
"""
