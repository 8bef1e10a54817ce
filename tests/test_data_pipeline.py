"""data/: downloads fail fast and say what to do, archives cannot escape their folder,
Wikipedia formatting, sharding and HDF5 creation produce what the next step reads.
Offline: servers are local threads on 127.0.0.1."""

import functools
import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections import Counter

import numpy as np
import pytest

from conftest import REPO, SAMPLE, write_vocab
from data import bertPrep, downloader, sharding, text_formatting
from data.fetch import DownloadError, UnsafeArchiveError, extract_archive, fetch
from pretraining_data import ShardLimits, read_shard

# ----------------------------------------------------------------------------- downloads

@pytest.fixture
def server(tmp_path):
    """(base URL, folder it serves) of a local HTTP server."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_fails_at_once_naming_url_reason_and_path(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/train-v1.1.json"
    target = tmp_path / "squad" / "train-v1.1.json"
    start = time.monotonic()
    with pytest.raises(DownloadError) as error:
        fetch(url, target, connect_timeout=2, progress=False)
    assert time.monotonic() - start < 3
    message = str(error.value)
    assert url in message and "refused" in message.lower()
    assert f"put it at {target}" in message
    assert not target.exists() and not list(tmp_path.rglob("*.tmp"))


def test_server_that_never_answers_fails_after_the_read_timeout(tmp_path):
    with socket.socket() as silent:  # listens, never accepts: the connection hangs
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/big.zip"
        start = time.monotonic()
        with pytest.raises(DownloadError, match="sent nothing for 1 s"):
            fetch(url, tmp_path / "big.zip", connect_timeout=1, read_timeout=1, progress=False)
        assert time.monotonic() - start < 4


def test_download_is_checked_atomic_and_not_repeated(server, tmp_path):
    base, served = server
    (served / "dev.json").write_bytes(b'{"data": []}')
    md5 = hashlib.md5(b'{"data": []}').hexdigest()
    target = tmp_path / "out" / "dev.json"
    fetch(f"{base}/dev.json", target, md5=md5, progress=False)
    assert target.read_bytes() == b'{"data": []}'

    (served / "dev.json").unlink()  # present files are used as they are, not fetched again
    fetch(f"{base}/dev.json", target, md5=md5, progress=False)

    with pytest.raises(DownloadError, match="md5"):
        fetch(f"{base}/dev.json", target, md5="0" * 32, progress=False)
    (served / "other.json").write_bytes(b"changed upstream")
    with pytest.raises(DownloadError, match="--skip_checksums"):
        fetch(f"{base}/other.json", tmp_path / "out" / "other.json", md5=md5, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dev.json"]

    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{base}/missing.json", tmp_path / "out" / "missing.json", progress=False)


def test_bertprep_download_stops_at_the_first_unreachable_file(tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setattr(downloader, "SQUAD_FILES", (
        ("v1.1/train-v1.1.json", f"{dead}/train-v1.1.json", None),
        ("v1.1/dev-v1.1.json", f"{dead}/dev-v1.1.json", None)))
    args = bertPrep.parse_args(["--action", "download", "--dataset", "squad",
                                "--working_dir", str(tmp_path), "--connect_timeout", "2"])
    with pytest.raises(DownloadError, match="train-v1.1.json"):
        bertPrep.main(args)
    assert not (tmp_path / "download" / "squad" / "v1.1" / "dev-v1.1.json").exists()


def test_wikipedia_through_lddl_is_fetched_first(tmp_path, monkeypatch):
    """LDDL's own downloader has no timeout and writes in place: the dump is fetched
    before LDDL runs, and an unreachable one fails without it."""
    monkeypatch.setattr(downloader, "lddl_can_download_wikipedia", lambda: True)
    monkeypatch.setattr(downloader, "WIKIPEDIA_DUMP", f"http://127.0.0.1:{closed_port()}/a.bz2")
    monkeypatch.setattr(downloader.subprocess, "run", pytest.fail)
    options = downloader.FetchOptions(connect_timeout=2, progress=False)
    with pytest.raises(DownloadError, match="put it at .*wikipedia/wikicorpus-en.xml.bz2"):
        downloader.download("wikicorpus_en", tmp_path, options)


def test_mrpc_is_split_into_glue_tsv_files(server, tmp_path, monkeypatch):
    base, served = server
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    rows = [f"{i % 2}\t{i}\t{i + 100}\tSentence {i} .\tOther {i} ." for i in range(6)]
    (served / "msr_paraphrase_train.txt").write_text("\ufeff" + "\n".join([header, *rows]))
    (served / "msr_paraphrase_test.txt").write_text("\n".join([header, *rows[:2]]))
    (served / "mrpc_dev_ids.tsv").write_text("1\t101\n4\t104\n")
    monkeypatch.setattr(downloader, "MRPC_FILES", {
        "train": f"{base}/msr_paraphrase_train.txt", "test": f"{base}/msr_paraphrase_test.txt",
        "dev_ids": f"{base}/mrpc_dev_ids.tsv"})
    folder = tmp_path / "MRPC"
    downloader.download_mrpc(folder, downloader.FetchOptions(progress=False))
    lines = {name: (folder / f"{name}.tsv").read_text().splitlines()
             for name in ("train", "dev", "test")}
    assert lines["train"] == [header] + [rows[i] for i in (0, 2, 3, 5)]
    assert lines["dev"] == [header, rows[1], rows[4]]
    assert lines["test"][0].split("\t")[0] == "index"
    assert lines["test"][2] == "1\t1\t101\tSentence 1 .\tOther 1 ."


def test_google_weights_are_extracted_and_their_vocabulary_checked(server, tmp_path, monkeypatch):
    base, served = server
    with zipfile.ZipFile(served / "tiny_L-2.zip", "w") as zf:
        zf.writestr("tiny_L-2/vocab.txt", "".join(f"t{i}\n" for i in range(7)))
        zf.writestr("tiny_L-2/bert_config.json", "{}")
    monkeypatch.setattr(downloader, "GOOGLE_BERT", base)
    monkeypatch.setattr(downloader, "GOOGLE_MODELS", {"tiny_L-2": (".", 7)})
    options = downloader.FetchOptions(progress=False)
    downloader.download_google_weights(tmp_path, ["tiny_L-2"], options)
    assert (tmp_path / "tiny_L-2" / "bert_config.json").is_file()

    monkeypatch.setattr(downloader, "GOOGLE_MODELS", {"tiny_L-2": (".", 30522)})
    with pytest.raises(ValueError, match="has 7 tokens, expected 30522"):
        downloader.download_google_weights(tmp_path, ["tiny_L-2"], options)


# ----------------------------------------------------------------------------- archives

def make_tar(path, members):
    """members: (name, kind, payload) with kind 'file' (payload bytes), 'dir', 'symlink'
    or 'hardlink' (payload = link target)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE}[kind]
            info.linkname = payload or ""
            tar.addfile(info)
    return path


def make_zip(path, names):
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(zipfile.ZipInfo(name), b"payload")
    return path


def test_a_good_archive_extracts_with_its_internal_links(tmp_path):
    archive = make_tar(tmp_path / "good.tar.gz", [
        ("model", "dir", None), ("model/vocab.txt", "file", b"[PAD]\n"),
        ("model/sub/config.json", "file", b"{}"), ("latest", "symlink", "model/vocab.txt"),
        ("model/sub/up", "symlink", "../vocab.txt"), ("copy.txt", "hardlink", "model/vocab.txt")])
    target = extract_archive(archive, tmp_path / "out")
    assert (target / "latest").read_bytes() == b"[PAD]\n"
    assert (target / "model" / "sub" / "up").read_bytes() == b"[PAD]\n"
    assert (target / "copy.txt").read_bytes() == b"[PAD]\n"

    extract_archive(make_zip(tmp_path / "good.zip", ["SST-2/train.tsv", "SST-2/dev.tsv"]),
                    tmp_path / "glue")
    assert (tmp_path / "glue" / "SST-2" / "dev.tsv").read_bytes() == b"payload"


@pytest.mark.parametrize("members, why", [
    ([("../evil.txt", "file", b"x")], "'..'"),
    ([("ok/../../evil.txt", "file", b"x")], "'..'"),
    ([("/tmp/evil.txt", "file", b"x")], "absolute path"),
    ([("link", "symlink", "../../outside")], "outside the target"),
    ([("link", "symlink", "/etc/passwd")], "absolute path"),
    ([("a/link", "symlink", "../../outside")], "outside the target"),
    ([("hard", "hardlink", "../outside")], "outside the target"),
    ([("here", "symlink", "."), ("here/../evil.txt", "file", b"x")], "'..'"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-absolute",
        "symlink-out-from-subdir", "hardlink-out", "symlink-chain"])
def test_tar_members_that_escape_are_refused_before_anything_is_written(tmp_path, members, why):
    archive = make_tar(tmp_path / "bad.tar.gz", [("fine.txt", "file", b"ok"), *members])
    target = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError, match=why):
        extract_archive(archive, target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()


@pytest.mark.parametrize("name, why", [("../evil.txt", "'..'"), ("/tmp/evil.txt", "absolute"),
                                       ("C:/evil.txt", "absolute"), ("a\\..\\..\\evil", "'..'")])
def test_zip_members_that_escape_are_refused(tmp_path, name, why):
    archive = make_zip(tmp_path / "bad.zip", ["fine.txt", name])
    with pytest.raises(UnsafeArchiveError, match=why):
        extract_archive(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_zip_symlink_entry_pointing_outside_is_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (0o120777 << 16)  # a symlink entry
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr(info, "../../outside")
    with pytest.raises(UnsafeArchiveError, match="outside the target"):
        extract_archive(tmp_path / "bad.zip", tmp_path / "out")


def test_a_link_already_in_the_target_folder_cannot_be_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "out"
    target.mkdir()
    os.symlink(outside, target / "cache")
    archive = make_tar(tmp_path / "a.tar.gz", [("cache/evil.txt", "file", b"x")])
    with pytest.raises(UnsafeArchiveError, match="through a link"):
        extract_archive(archive, target)
    assert list(outside.iterdir()) == []


def test_an_extraction_stopped_half_way_leaves_nothing_that_looks_extracted(tmp_path,
                                                                          monkeypatch):
    archive = make_zip(tmp_path / "SST-2.zip", ["SST-2/train.tsv", "SST-2/dev.tsv"])
    extract = zipfile.ZipFile.extract

    def killed_after_the_first(self, member, path=None, pwd=None):
        if str(member.filename).endswith("dev.tsv"):
            raise KeyboardInterrupt
        return extract(self, member, path, pwd)
    monkeypatch.setattr(zipfile.ZipFile, "extract", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, tmp_path / "glue")
    assert list((tmp_path / "glue").iterdir()) == []  # no SST-2/train.tsv, no staging
    monkeypatch.undo()
    (tmp_path / "glue" / "SST-2").mkdir()
    (tmp_path / "glue" / "SST-2" / "notes.txt").write_text("mine")
    extract_archive(archive, tmp_path / "glue")
    assert sorted(p.name for p in (tmp_path / "glue" / "SST-2").iterdir()) == [
        "dev.tsv", "notes.txt", "train.tsv"]
    assert sorted(p.name for p in (tmp_path / "glue").iterdir()) == ["SST-2"]


def test_single_file_bz2_is_decompressed_beside_its_name(tmp_path):
    import bz2
    (tmp_path / "wiki.xml.bz2").write_bytes(bz2.compress(b"<mediawiki/>"))
    extract_archive(tmp_path / "wiki.xml.bz2", tmp_path / "out")
    assert (tmp_path / "out" / "wiki.xml").read_bytes() == b"<mediawiki/>"


# ----------------------------------------------------------------------------- text

@pytest.mark.parametrize("text, sentences", [
    ("It rained. Then it stopped!  Did it? Yes.", ["It rained.", "Then it stopped!",
                                                  "Did it?", "Yes."]),
    ("Mr. Smith met Dr. Watson at 3.30 p.m. on Baker St. in London. They talked.",
     ["Mr. Smith met Dr. Watson at 3.30 p.m. on Baker St. in London.", "They talked."]),
    ("J. R. R. Tolkien wrote it, e.g. The Hobbit. The U.S. Army read it.",
     ["J. R. R. Tolkien wrote it, e.g. The Hobbit.", "The U.S. Army read it."]),
    ('He said "Stop." Then he left. (It was late.) Everyone slept.',
     ['He said "Stop."', "Then he left.", "(It was late.)", "Everyone slept."]),
    ("The value was 2.5 and rising... 1990 was a good year.",
     ["The value was 2.5 and rising...", "1990 was a good year."]),
    ("no capital after this. so no split", ["no capital after this. so no split"]),
])
def test_rule_splitter(text, sentences):
    assert sharding.split_sentences_by_rules(text) == sentences


def test_nltk_method_without_punkt_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(sharding, "punkt_splitter", lambda: None)
    with pytest.raises(RuntimeError, match="--segmentation_method rules"):
        sharding.sentence_splitter("nltk")
    assert sharding.sentence_splitter("auto") is sharding.split_sentences_by_rules


def test_wikiextractor_output_becomes_one_article_per_line(tmp_path):
    extracted = tmp_path / "extracted"
    (extracted / "AA").mkdir(parents=True)
    (extracted / "AB").mkdir()
    (extracted / "AA" / "wiki_00").write_text(
        '<doc id="12" url="u" title="Anarchism">\nAnarchism\n\nAnarchism is a philosophy.\n\n'
        'It has many schools.\n</doc>\n<doc id="13" url="u" title="Empty">\nEmpty\n\n</doc>\n')
    (extracted / "AB" / "wiki_00").write_text(
        '<doc id="25" url="u" title="Autism">\nAutism\n\nAutism is a condition.\n</doc>\n')
    output = tmp_path / "formatted" / "wikicorpus_en_one_article_per_line.txt"
    assert text_formatting.format_wikipedia(extracted, output) == 2
    assert output.read_text().splitlines() == [
        "Anarchism is a philosophy. It has many schools.", "Autism is a condition."]


# ----------------------------------------------------------------------------- sharding

@pytest.fixture
def articles(tmp_path):
    """The sample's 13 books as one article per line; returns (file, articles)."""
    documents = SAMPLE.read_text(encoding="utf-8").strip().split("\n\n")
    lines = [" ".join(line.strip() for line in d.splitlines() if line.strip()) for d in documents]
    path = tmp_path / "sample_one_article_per_line.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, lines


def read_documents(path):
    """Documents of a shard: lists of lines; asserts the blank-line format on the way."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and not text.startswith("\n") and "\n\n\n" not in text
    return [block.split("\n") for block in text.strip("\n").split("\n\n")]


def test_sharding_keeps_every_document_once_one_sentence_per_line(articles, tmp_path):
    path, lines = articles
    args = bertPrep.parse_args([
        "--action", "sharding", "--dataset", "sample", "--working_dir", str(tmp_path),
        "--input_files", str(path), "--n_training_shards", "4", "--n_test_shards", "2",
        "--fraction_test_set", "0.25", "--segmentation_method", "rules", "--n_processes", "2"])
    bertPrep.main(args)
    folder = tmp_path / "sharded_training_shards_4_test_shards_2_fraction_0.25" / "sample"
    assert sorted(p.name for p in folder.iterdir()) == [
        "sample_test_0.txt", "sample_test_1.txt", *[f"sample_training_{i}.txt" for i in range(4)]]

    found = {split: [doc for p in sorted(folder.glob(f"sample_{split}_*.txt"))
                     for doc in read_documents(p)] for split in ("training", "test")}
    assert len(found["test"]) == 3  # floor(13 * 0.25): every 4th article
    everything = found["training"] + found["test"]
    assert Counter(" ".join(doc) for doc in everything) == Counter(lines)
    for doc in everything:
        assert doc == sharding.split_sentences_by_rules(" ".join(doc))
    assert sum(len(doc) for doc in everything) > 2000


def test_sharding_refuses_to_leave_shards_empty(articles, tmp_path):
    path, _ = articles
    with pytest.raises(ValueError, match="21 of 33 training shards would be empty"):
        sharding.shard_articles([path], tmp_path / "out", "sample", 33, 1, 0.1, "rules")
    assert list((tmp_path / "out").iterdir()) == []


# ----------------------------------------------------------------------------- HDF5

def test_create_hdf5_files_makes_shards_run_pretraining_reads(articles, tmp_path):
    path, lines = articles
    vocab = write_vocab(tmp_path / "vocab.txt", "\n".join(lines))
    common = ["--dataset", "sample", "--working_dir", str(tmp_path), "--n_training_shards", "2",
              "--n_test_shards", "1", "--fraction_test_set", "0.1", "--n_processes", "2"]
    bertPrep.main(bertPrep.parse_args(["--action", "sharding", "--input_files", str(path),
                                       "--segmentation_method", "rules", *common]))
    bertPrep.main(bertPrep.parse_args([
        "--action", "create_hdf5_files", "--vocab_file", str(vocab), "--max_seq_length", "64",
        "--max_predictions_per_seq", "10", "--dupe_factor", "1", *common]))

    root = tmp_path / ("hdf5_lower_case_1_seq_len_64_max_pred_10_masked_lm_prob_0.15_"
                       "random_seed_12345_dupe_factor_1")
    training = sorted((root / "sample").glob("*.hdf5"))
    test = sorted((root / "sample_test").glob("*.hdf5"))
    assert [p.name for p in training] == ["sample_training_0.hdf5", "sample_training_1.hdf5"]
    assert [p.name for p in test] == ["sample_test_0.hdf5"]
    for shard in training + test:
        arrays = read_shard(shard, ShardLimits(max_seq_length=64, max_predictions_per_seq=10))
        count = len(arrays["input_ids"])
        assert count > 50
        assert arrays["input_ids"].shape == (count, 64)
        assert arrays["masked_lm_positions"].shape == (count, 10)
        assert set(np.unique(arrays["next_sentence_labels"])) == {0, 1}
    first, second = (read_shard(p)["input_ids"] for p in training)
    assert not np.array_equal(first[:50], second[:50])


def test_create_hdf5_files_names_the_missing_vocabulary(tmp_path):
    args = bertPrep.parse_args(["--action", "create_hdf5_files", "--dataset", "wikicorpus_en",
                                "--working_dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="uncased_L-24_H-1024_A-16/vocab.txt"):
        bertPrep.main(args)


def shard_under_open_file_limits(articles, folder, soft, hard, shards):
    """shard_articles in a process whose open-file limits are (soft, hard)."""
    path, _ = articles
    code = ("import resource; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
            "from data import sharding; "
            f"sharding.shard_articles([{str(path)!r}], {str(folder)!r}, 's', {shards}, 0, 0.0, "
            "'rules')")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_sharding_raises_its_open_file_limit_to_hold_every_shard(articles, tmp_path):
    done = shard_under_open_file_limits(articles, tmp_path / "raised", 12, 200, 13)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "raised").glob("s_training_*.txt"))) == 13
    refused = shard_under_open_file_limits(articles, tmp_path / "refused", 40, 60, 12)
    assert "12 shard files are written at once, which needs 76 open files, but this process " \
           "may open at most 60 (ulimit -Hn)" in refused.stderr
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
