"""Offline embedding and tokenization of whole datasets on Ray Data (`bridle-batch`).

The same decoding, windowing and ONNX model directories as the service, without HTTP in between: files
are grouped into shards, each shard is decoded, windowed and run through the encoder and tokenizer by
an ONNX Runtime actor, and written as Parquet with a completion marker, so a re-run skips what is done.
Ray is an optional extra (`pip install .[batch]`); nothing outside this package imports it.
"""
