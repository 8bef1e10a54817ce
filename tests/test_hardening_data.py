"""Hardening of the data tools: casing mismatch, binary input, unwritable output, workers
that outlive a killed parent, stale shards, honest download time-outs."""

import ctypes
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import create_pretraining_data as cpd
from conftest import REPO, SAMPLE, SPECIALS, sample_documents, write_vocab
from data import bertPrep
from data.fetch import DownloadError, fetch
from tokenization import FullTokenizer, load_vocab


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


# ----------------------------------------------------------------------------- helpers

def cpd_args(input_file, vocab, output, *extra):
    return cpd.parse_args(["--input_file", str(input_file), "--output_file", str(output),
                           "--vocab_file", str(vocab), "--num_workers", "1",
                           "--disable_progress_bar", *map(str, extra)])


def run_cli(*args, drop_root_override=False, **kwargs):
    """create_pretraining_data.py as a user runs it. drop_root_override: without root's
    CAP_DAC_OVERRIDE, so that file permissions hold for root too (tests run as root here)."""
    def without_override():
        ctypes.CDLL(None).prctl(24, 1, 0, 0, 0)  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE

    return subprocess.run([sys.executable, str(REPO / "create_pretraining_data.py"),
                           *map(str, args)], capture_output=True, text=True,
                          preexec_fn=without_override if drop_root_override else None,
                          **kwargs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    text = sample_documents(8, lines_per_document=150)
    (folder / "corpus.txt").write_text(text, encoding="utf-8")
    return folder / "corpus.txt", write_vocab(folder / "vocab.txt", text)


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ----------------------------------------------------------------------------- 4: casing

def test_casing_mismatch_is_warned_once_naming_the_flag(corpus, tmp_path, caplog):
    text, uncased = corpus
    caplog.set_level(logging.WARNING, logger="bert")
    tokenizer = FullTokenizer(uncased, do_lower_case=False)
    question = "When did Beyonce start becoming popular in Houston Texas ?"
    assert tokenizer.tokenize(question).count("[UNK]") >= 4  # what the warning is about
    (message,) = warnings_of(caplog)
    assert f"vocab file {str(uncased)!r} is uncased" in message
    assert "pass --do_lower_case" in message and "[UNK]" in message

    cased = tmp_path / "cased_vocab.txt"
    cased.write_text("\n".join(SPECIALS + ["The", "the", "Houston", "houston", "a"]) + "\n")
    caplog.clear()
    FullTokenizer(cased, do_lower_case=True)
    (message,) = warnings_of(caplog)
    assert f"vocab file {str(cased)!r} is cased" in message
    assert "pass --no-do_lower_case" in message

    caplog.clear()
    FullTokenizer(uncased, do_lower_case=True)
    FullTokenizer(cased, do_lower_case=False)
    assert warnings_of(caplog) == []

    # create_pretraining_data checks once, before its workers build their tokenizers.
    cpd.main(cpd_args(text, uncased, tmp_path / "out.hdf5", "--no-do_lower_case",
                      "--dupe_factor", 1))
    assert sum("is uncased" in m for m in warnings_of(caplog)) == 1


def test_bertprep_warns_of_a_casing_mismatch_in_its_own_flags(corpus, tmp_path, caplog):
    """bertPrep captures create_pretraining_data's output, so it checks once itself."""
    caplog.set_level(logging.WARNING, logger="bert")
    args = bertPrep.parse_args(["--action", "create_hdf5_files", "--dataset", "sample",
                                "--working_dir", str(tmp_path), "--vocab_file", str(corpus[1]),
                                "--do_lower_case", "0"])
    with pytest.raises(FileNotFoundError, match="no text shards"):
        bertPrep.main(args)
    (message,) = warnings_of(caplog)
    assert f"vocab file {str(corpus[1])!r} is uncased" in message
    assert message.endswith(": pass --do_lower_case 1")

def test_a_text_mostly_unknown_to_the_vocabulary_is_warned_of(corpus, tmp_path, caplog):
    text, vocab = corpus
    caplog.set_level(logging.WARNING, logger="bert")
    cpd.main(cpd_args(text, vocab, tmp_path / "good.hdf5", "--dupe_factor", 1))
    assert warnings_of(caplog) == []
    words = tmp_path / "words_only.txt"  # common words, no single characters to fall back on
    words.write_text("\n".join(SPECIALS + ["the", "of", "and", "a", "to", "in", "was"]) + "\n")
    cpd.main(cpd_args(text, words, tmp_path / "bad.hdf5", "--dupe_factor", 1))
    (message,) = warnings_of(caplog)
    assert re.search(r"\d+\.\d% of the text's tokens are \[UNK\]", message)
    assert f"--vocab_file {words} does not fit the text" in message


# ----------------------------------------------------------------------------- 5: binary input

def test_binary_input_or_vocabulary_is_an_error_naming_the_file(corpus, tmp_path):
    text, vocab = corpus
    executable = tmp_path / "program"
    executable.write_bytes(Path(sys.executable).read_bytes()[:300_000])
    output = tmp_path / "out" / "train.hdf5"
    with pytest.raises(ValueError, match=rf"--input_file {re.escape(str(executable))} is not "
                                         r"text \(a NUL byte at byte \d+\)"):
        cpd.main(cpd_args(executable, vocab, output))
    assert not output.parent.exists()  # refused before any work

    noise = tmp_path / "noise.txt"  # undecodable, but no NUL byte
    noise.write_bytes(bytes(range(128, 256)) * 50 + b"\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(noise))} is not text \(\d+% of its "
                                         r"characters are not UTF-8\)"):
        cpd.main(cpd_args(noise, vocab, output))

    late = tmp_path / "binary_tail.txt"  # text beyond the first bytes read up front
    late.write_bytes(text.read_bytes() + b"\x7fELF\x00\x00\x01" * 100)
    with pytest.raises(ValueError, match=rf"{re.escape(str(late))} is not text \(a NUL byte "
                                         rf"at byte {len(text.read_bytes()) + 4}\)"):
        cpd.main(cpd_args(late, vocab, output, "--shard_size_mb", 0.02))
    assert not output.parent.exists()  # found before the first shard, not after it

    with pytest.raises(ValueError, match=rf"vocab file {re.escape(repr(str(executable)))} is "
                                         r"not a text file \(a NUL byte"):
        cpd.main(cpd_args(text, executable, output))
    latin1_vocab = tmp_path / "latin1_vocab.txt"
    latin1_vocab.write_bytes(vocab.read_bytes() + "café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1_vocab.txt' is not UTF-8 \(byte \d+\)"):
        load_vocab(latin1_vocab)


def test_a_run_that_fails_half_way_removes_the_shards_it_wrote(corpus, tmp_path,
                                                               monkeypatch, caplog):
    """A failure after some shards (a full disk, say) must not leave part of the new set
    beside an earlier run's files; the earlier files stay."""
    text, vocab = corpus
    output = tmp_path / "out" / "train.hdf5"
    output.parent.mkdir()
    earlier = output.with_name("train_00009.hdf5")
    earlier.write_bytes(b"an earlier run's shard")
    time.sleep(0.1)
    real_process_shard = cpd.process_shard

    def disk_full_at_the_third_shard(text, index, *rest):
        if index == 2:
            raise OSError(28, "No space left on device")
        return real_process_shard(text, index, *rest)

    monkeypatch.setattr(cpd, "process_shard", disk_full_at_the_third_shard)
    with pytest.raises(OSError, match="No space left on device"):
        cpd.main(cpd_args(text, vocab, output, "--shard_size_mb", 0.01, "--num_workers", 1))
    assert sorted(p.name for p in output.parent.iterdir()) == ["train_00009.hdf5"]
    assert "removed the 2 shard(s) this run had written" in caplog.text


def test_a_few_bad_bytes_in_real_text_are_still_accepted(corpus, tmp_path):
    text, vocab = corpus
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(text.read_bytes().replace(b"the ", "thé ".encode("latin-1"), 20))
    totals = cpd.main(cpd_args(latin1, vocab, tmp_path / "out.hdf5", "--dupe_factor", 1))
    assert totals["instances"] > 100 and (tmp_path / "out.hdf5").is_file()


# ----------------------------------------------------------------------------- 8: output folder

def test_unwritable_output_folder_fails_before_any_work_and_loses_nothing(corpus, tmp_path):
    text, vocab = corpus
    folder = tmp_path / "hdf5"
    folder.mkdir()
    earlier = folder / "train_00000.hdf5"
    earlier.write_bytes(b"an earlier run's shard")
    folder.chmod(0o555)
    try:
        result = run_cli("--input_file", text, "--output_file", folder / "train.hdf5",
                         "--vocab_file", vocab, "--shard_size_mb", 0.02, "--num_workers", 1,
                         drop_root_override=True)
    finally:
        folder.chmod(0o755)
    assert result.returncode == 1
    assert (f"create_pretraining_data.py: error: --output_file {folder / 'train.hdf5'}: its "
            f"folder {folder} is not a writable folder: Permission denied") in result.stderr
    assert "creating instances" not in result.stderr + result.stdout  # no work started
    assert sorted(folder.iterdir()) == [earlier]
    assert earlier.read_bytes() == b"an earlier run's shard"


# ----------------------------------------------------------------------------- 9: workers, shards

def process_state(pid):
    """The one-letter state of a process, None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def children_of(pid):
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_parent(tmp_path):
    sample = SAMPLE.read_text(encoding="utf-8")
    vocab = write_vocab(tmp_path / "vocab.txt", sample)
    (tmp_path / "big.txt").write_text(sample * 8, encoding="utf-8")  # ~2 MB, ~20 shards
    command = [sys.executable, str(REPO / "create_pretraining_data.py"),
               "--input_file", str(tmp_path / "big.txt"), "--vocab_file", str(vocab),
               "--output_file", str(tmp_path / "out" / "big.hdf5"), "--num_workers", "2",
               "--shard_size_mb", "0.1", "--dupe_factor", "3", "--disable_progress_bar"]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.monotonic() + 60
        while len(workers := children_of(parent.pid)) < 2 and parent.poll() is None:
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.05)
        assert parent.poll() is None, "the run ended before it could be killed: more text"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(process_state(pid) not in (None, "Z") for pid in workers):
            assert time.monotonic() < deadline, f"workers {workers} outlived their parent"
            time.sleep(0.05)
    finally:  # never leave processes behind, whatever failed
        parent.kill()
        for pid in workers:
            if process_state(pid) not in (None, "Z"):
                os.kill(pid, signal.SIGKILL)


def test_shards_of_an_earlier_run_under_the_prefix_are_named(corpus, tmp_path, caplog):
    text, vocab = corpus
    caplog.set_level(logging.WARNING, logger="bert")
    output = tmp_path / "hdf5" / "part.hdf5"
    first = cpd.main(cpd_args(text, vocab, output, "--shard_size_mb", 0.01, "--dupe_factor", 1))
    cpd.main(cpd_args(text, vocab, output, "--shard_size_mb", 0.01, "--dupe_factor", 1))
    assert warnings_of(caplog) == []  # the same run again overwrites every file

    second = cpd.main(cpd_args(text, vocab, output, "--shard_size_mb", 0.03, "--dupe_factor", 1))
    stale = sorted(set(first["files"]) - set(second["files"]))
    assert len(second["files"]) < len(first["files"]) and stale
    (message,) = warnings_of(caplog)
    assert message.startswith(f"--output_file {output}: {len(stale)} file(s) with its prefix "
                              f"were not written by this run")
    assert ", ".join(stale[:3]) in message and "run_pretraining.py would read them" in message

    caplog.clear()
    cpd.main(cpd_args(text, vocab, output, "--dupe_factor", 1))  # one file: part.hdf5 itself
    (message,) = warnings_of(caplog)
    assert f"{len(set(first['files']) | set(second['files']))} file(s)" in message
    assert Path(first["files"][0]).is_file()  # named, never deleted


def test_a_character_cut_by_the_check_blocks_edge_is_no_bad_byte(tmp_path, monkeypatch):
    """The up-front check reads blocks; one ending inside a two-byte character must not make
    the few bytes after it look like a mostly undecodable block."""
    monkeypatch.setattr(cpd, "CHECK_BLOCK_BYTES", 64)
    text = tmp_path / "accents.txt"
    text.write_bytes(b"a" * 63 + "é\n".encode() + "déjà vu €\n".encode() * 20)
    cpd.check_text_files([text])
    blocks = list(cpd._whole_character_blocks(text))
    assert b"".join(block for _, block in blocks) == text.read_bytes() and len(blocks) > 3
    for offset, block in blocks:
        block.decode("utf-8")  # strict: no block ends inside a character
        assert text.read_bytes()[offset:offset + len(block)] == block
    text.write_bytes(b"a" * 63 + b"\xff\xfe\xfd" * 30 + b"\n")
    with pytest.raises(ValueError, match="are not UTF-8"):
        cpd.check_text_files([text])
    # A file cut inside its last character (head -c) is text with one bad character.
    for start in (b"", "déjà vu €\n".encode() * 100):
        text.write_bytes(start + b"Some sentence about the caf\xc3")
        cpd.check_text_files([text])
