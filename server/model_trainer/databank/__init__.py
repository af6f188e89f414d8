"""Data Bank: the file store the trainer's services share (contract: data-bank-api.md).

client.py    DataBankClient: streamed, verified, retried uploads and downloads
errors.py    DataBankError and one subclass per documented failure
archive.py   pack_directory / safe_extract (plain tar, hostile members refused)
corpus.py    CorpusFetcher: one verified local copy per corpus id, across processes
wire.py      what both sides say: FileInfo, error body, codes, the file_id format
server.py    the compatible local server (`modeltrainer-databank`), with ranges.py,
             storage.py, upload.py and server_http.py behind it
"""
