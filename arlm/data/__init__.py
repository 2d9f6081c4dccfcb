"""Corpus preparation (text -> token shards) and batch loading."""
