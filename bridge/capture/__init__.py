"""Run a model and record what it computes: the chain's layers (``_chain``, ``_capture``) and every module
call of a tree (``_capture_tree``)."""
