"""`modeltrainer`: the command-line client of the API and Data Bank (typer + rich).

`app.py` holds the commands, `client.py` the HTTP side and its exit codes, `config.py` where
the URLs and keys come from, `render.py` tables, JSON and the live progress bar.
"""
