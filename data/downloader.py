"""The data sets BERT's recipe downloads, where they come from and where they go.

Everything lands under <working_dir>/download/ in NVIDIA's layout:
    squad/v1.1/{train-v1.1.json, dev-v1.1.json, evaluate-v1.1.py}, squad/v2.0/...
    glue/MRPC/{train,dev,test}.tsv, glue/SST-2/{train,dev,test}.tsv
    google_pretrained_weights/<model>/{vocab.txt, bert_config.json, bert_model.ckpt.*}
    wikicorpus_en/wikicorpus_en.xml.bz2    (without LDDL; with LDDL: <working_dir>/wikipedia/)

Checksums: SQuAD's md5 sums are the ones NVIDIA's squad_download.sh checks. GLUE, the
Wikipedia dump (it changes every month) and the Google zips are not checksummed here;
instead the Google vocabularies are checked for their known sizes after extraction.

Deliberate deviations from NVIDIA's downloaders:
- GLUE MRPC and SST-2 are fetched from their data URLs directly and MRPC's tsv files are
  written here, instead of downloading and running a copy of download_glue_data.py.
- Wikipedia goes through LDDL's download_wikipedia only when it can finish (LDDL and
  wikiextractor installed), and the dump is fetched here first (atomically, with a
  timeout), so an offline run fails in seconds and an interrupted one starts the dump over.
"""

import csv
import importlib.util
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from data.fetch import extract_archive, fetch
from utils import atomic_path, logger

SQUAD_DATA = "https://rajpurkar.github.io/SQuAD-explorer/dataset"
CODALAB = "https://worksheets.codalab.org/rest/bundles"
# (relative path under download/squad, URL, md5)
SQUAD_FILES = (
    ("v1.1/train-v1.1.json", f"{SQUAD_DATA}/train-v1.1.json", "981b29407e0affa3b1b156f72073b945"),
    ("v1.1/dev-v1.1.json", f"{SQUAD_DATA}/dev-v1.1.json", "3e85deb501d4e538b6bc56f786231552"),
    ("v1.1/evaluate-v1.1.py", f"{CODALAB}/0xbcd57bee090b421c982906709c8c27e1/contents/blob/",
     "afb04912d18ff20696f7f88eed49bea9"),
    ("v2.0/train-v2.0.json", f"{SQUAD_DATA}/train-v2.0.json", "62108c273c268d70893182d5cf8df740"),
    ("v2.0/dev-v2.0.json", f"{SQUAD_DATA}/dev-v2.0.json", "246adae8b7002f8679c027697b0b7cf8"),
    ("v2.0/evaluate-v2.0.py", f"{CODALAB}/0x6b567e1cf2e041ec80d7098f031c5c9e/contents/blob/",
     "ff23213bed5516ea4a6d9edb6cd7d627"),
)

GLUE_DATA = "https://dl.fbaipublicfiles.com/glue/data"
SENTEVAL_DATA = "https://dl.fbaipublicfiles.com/senteval/senteval_data"
MRPC_FILES = {"train": f"{SENTEVAL_DATA}/msr_paraphrase_train.txt",
              "test": f"{SENTEVAL_DATA}/msr_paraphrase_test.txt",
              "dev_ids": f"{GLUE_DATA}/mrpc_dev_ids.tsv"}
SST2_ZIP = f"{GLUE_DATA}/SST-2.zip"

GOOGLE_BERT = "https://storage.googleapis.com/bert_models"
# model name -> (release folder, vocabulary size)
GOOGLE_MODELS = {
    "uncased_L-12_H-768_A-12": ("2018_10_18", 30522),
    "uncased_L-24_H-1024_A-16": ("2018_10_18", 30522),
    "cased_L-12_H-768_A-12": ("2018_10_18", 28996),
    "cased_L-24_H-1024_A-16": ("2018_10_18", 28996),
    "multi_cased_L-12_H-768_A-12": ("2018_11_23", 119547),
    "multilingual_L-12_H-768_A-12": ("2018_11_03", 105879),
    "chinese_L-12_H-768_A-12": ("2018_11_03", 21128),
}

WIKIPEDIA_DUMP = "https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles.xml.bz2"

DATASETS = ("google_pretrained_weights", "squad", "mrpc", "sst-2", "wikicorpus_en")


@dataclass(frozen=True)
class FetchOptions:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    verify_checksums: bool = True
    progress: bool = True

    def fetch(self, url, path, md5=None):
        return fetch(url, path, md5 if self.verify_checksums else None, self.connect_timeout,
                     self.read_timeout, self.progress)


def download(dataset, working_dir, options=FetchOptions(), google_models=tuple(GOOGLE_MODELS)):
    """Fetches one data set into <working_dir>/download (Wikipedia: see download_wikipedia)."""
    download_dir = Path(working_dir) / "download"
    if dataset == "squad":
        download_squad(download_dir / "squad", options)
    elif dataset == "mrpc":
        download_mrpc(download_dir / "glue" / "MRPC", options)
    elif dataset == "sst-2":
        download_sst2(download_dir / "glue", options)
    elif dataset == "google_pretrained_weights":
        download_google_weights(download_dir / "google_pretrained_weights", google_models,
                                options)
    elif dataset == "wikicorpus_en":
        download_wikipedia(Path(working_dir), options)
    else:
        raise ValueError(f"--dataset {dataset} cannot be downloaded; choose from "
                         f"{', '.join(DATASETS)}")


def download_squad(folder, options):
    for relative, url, md5 in SQUAD_FILES:
        options.fetch(url, folder / relative, md5)


def download_mrpc(folder, options):
    """MSR paraphrase files -> GLUE's train.tsv / dev.tsv (split by GLUE's dev ids) and
    test.tsv (index instead of the label)."""
    raw = {name: options.fetch(url, folder / "raw" / Path(url).name)
           for name, url in MRPC_FILES.items()}
    with open(raw["dev_ids"], encoding="utf-8-sig") as f:
        dev_ids = {tuple(row[:2]) for row in csv.reader(f, delimiter="\t") if len(row) >= 2}
    header, rows = _read_msr(raw["train"])
    _write_tsv(folder / "train.tsv", header, [r for r in rows if tuple(r[1:3]) not in dev_ids])
    _write_tsv(folder / "dev.tsv", header, [r for r in rows if tuple(r[1:3]) in dev_ids])
    _, test_rows = _read_msr(raw["test"])
    _write_tsv(folder / "test.tsv", ["index", *header[1:]],
               [[str(i), *row[1:]] for i, row in enumerate(test_rows)])
    logger.info("MRPC written to %s", folder)


def _read_msr(path):
    """(header, rows) of an MSR paraphrase file: Quality, #1 ID, #2 ID, #1 String, #2 String."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    bad = [i + 2 for i, row in enumerate(rows) if len(row) != 5]
    if not lines or bad:
        raise ValueError(f"{path} is not an MSR paraphrase file (5 tab-separated columns); "
                         f"lines {bad[:5]} differ: delete it and download again")
    return lines[0].split("\t"), rows


def _write_tsv(path, header, rows):
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join("\t".join(row) for row in [header, *rows]) + "\n",
                             encoding="utf-8")


def download_sst2(glue_folder, options):
    archive = options.fetch(SST2_ZIP, glue_folder / "SST-2.zip")
    if not (glue_folder / "SST-2" / "train.tsv").is_file():
        extract_archive(archive, glue_folder)
    logger.info("SST-2 is in %s", glue_folder / "SST-2")


def download_google_weights(folder, models, options):
    """Google's TF checkpoints with vocab.txt and bert_config.json, one folder per model."""
    for model in models:
        if model not in GOOGLE_MODELS:
            raise ValueError(f"unknown Google model {model}; choose from "
                             f"{', '.join(GOOGLE_MODELS)}")
        release, vocab_size = GOOGLE_MODELS[model]
        vocab = folder / model / "vocab.txt"
        if not vocab.is_file():
            archive = options.fetch(f"{GOOGLE_BERT}/{release}/{model}.zip",
                                    folder / f"{model}.zip")
            extract_archive(archive, folder)
        check_vocab(vocab, vocab_size)


def check_vocab(path, expected_size):
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing after extraction: the zip does not have "
                                f"the expected layout <model>/vocab.txt")
    with open(path, encoding="utf-8") as f:
        size = sum(1 for _ in f)
    if size != expected_size:
        raise ValueError(f"{path} has {size} tokens, expected {expected_size}: the download is "
                         f"damaged; delete {path.parent} and its zip and download again")


def lddl_can_download_wikipedia():
    """LDDL's download_wikipedia also extracts the text, which needs wikiextractor."""
    return shutil.which("download_wikipedia") is not None and \
        importlib.util.find_spec("wikiextractor") is not None


def download_wikipedia(working_dir, options):
    """With LDDL: download_wikipedia --outdir <working_dir>/wikipedia (dump, extracted text,
    LDDL source shards). Without: the dump to download/wikicorpus_en/wikicorpus_en.xml.bz2,
    for text_formatting."""
    if not lddl_can_download_wikipedia():
        logger.info("LDDL's download_wikipedia (with wikiextractor) is not installed: "
                    "fetching the dump directly")
        options.fetch(WIKIPEDIA_DUMP, working_dir / "download" / "wikicorpus_en" /
                      "wikicorpus_en.xml.bz2")
        return
    outdir = working_dir / "wikipedia"
    # The dump is fetched here, not by LDDL: LDDL writes it in place without a timeout, and
    # a download it leaves cut short looks complete to every later run.
    options.fetch(WIKIPEDIA_DUMP, outdir / "wikicorpus-en.xml.bz2")
    command = ["download_wikipedia", "--outdir", str(outdir), "--no-download"]
    logger.info("running %s", " ".join(command))
    subprocess.run(command, check=True)
