"""The trainer's side of the Data Bank, the file store its services share (data-bank-api.md).

client.py    DataBankClient: streamed, verified, retried uploads and downloads
errors.py    DataBankError and one subclass per documented failure
archive.py   pack_directory / safe_extract (plain tar, hostile members refused)
corpus.py    CorpusFetcher: one verified local copy per corpus id, in the disk cache

What client and server both say (FileInfo, error body, codes, the file_id format) is in
`service_common.databank_contract`; the compatible local server is its own service,
`databank_server`, which imports nothing from here.
"""
