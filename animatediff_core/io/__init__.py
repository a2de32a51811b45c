"""Reading and writing: any fsspec URI (`storage`), bounded reads of what untrusted cells name (`bounded`),
the private model cache (`cache`), Hub ids and https files (`hub`), weight files read as data and strict key
checks (`checkpoints`, `torchscript_weights`), video encode and decode (`video_io`).

Imports only the foundation (`errors`, `configs`) and itself: storage <- bounded <- cache <- hub <- checkpoints.
"""
