"""Hardening of the data tools: casing mismatch, binary input, unwritable output, workers
that outlive a killed parent, stale shards, honest download time-outs."""

import os
import socket
import time

import pytest

import create_pretraining_data as cpd
from data.fetch import DownloadError, fetch


# ----------------------------------------------------------------------------- 14: time-outs

def test_proxy_timeout_states_the_limit_that_ran_out_and_the_time_waited(tmp_path, monkeypatch):
    """Through a proxy, an HTTPS tunnel waits with the connect time-out (1 s here): the
    message must not claim the read time-out (5 s) nor more time than was waited."""
    with socket.socket() as silent_proxy:  # accepts the connection, never answers CONNECT
        silent_proxy.bind(("127.0.0.1", 0))
        silent_proxy.listen(1)
        proxy = f"http://127.0.0.1:{silent_proxy.getsockname()[1]}"
        for name in ("NO_PROXY", "no_proxy", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", proxy.replace("//", "//user:secret@"))
        start = time.monotonic()
        with pytest.raises(DownloadError) as error:
            fetch("https://example.com/big.zip", tmp_path / "big.zip", connect_timeout=1,
                  read_timeout=5, progress=False)
        waited = time.monotonic() - start
    message = str(error.value)
    assert waited < 3
    assert f"the proxy {proxy} or the server sent nothing for 1 s" in message
    assert "5 s" not in message and "secret" not in message
    assert "gave up after 1." in message
    assert f"put it at {tmp_path / 'big.zip'}" in message
