"""What the API and the worker share through Redis: the key schema (`keys`), typed run and
tokenizer records (`records`), job log lines and loss curves (`runlog`), and the
`trainer:events` contract (`events`). Nothing here imports torch or RQ."""
