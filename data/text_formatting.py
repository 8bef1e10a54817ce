"""Wikipedia text as WikiExtractor writes it -> one article per line.

WikiExtractor (pip install wikiextractor) turns the XML dump into files AA/wiki_00, ...
holding blocks `<doc id=".." url=".." title="..">`, the title line, the paragraphs, and
`</doc>`. Each block becomes one line: its paragraphs joined by spaces, the title dropped.

Deliberate deviations from NVIDIA's WikicorpusTextFormatting:
- Files are streamed block by block; the output is written under a temporary name and
  renamed when complete.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

from utils import atomic_path, logger


def extracted_files(folder):
    """WikiExtractor's output files (wiki_00, wiki_01, ... in AA/, AB/, ...) in order."""
    files = sorted(p for p in Path(folder).rglob("wiki_*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder} holds no WikiExtractor output (AA/wiki_00, ...): "
                                f"run WikiExtractor on the dump first")
    return files


def wiki_articles(path):
    """Yields each article of one WikiExtractor file as a single line of text."""
    inside, lines = False, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("<doc "):
                inside, lines = True, []
            elif line.startswith("</doc>"):
                article = " ".join(lines[1:])  # lines[0] is the title
                if article:
                    yield article
                inside = False
            elif inside and line.strip():
                lines.append(line.strip())


def format_wikipedia(extracted_folder, output_file):
    """Writes every article under `extracted_folder` to `output_file`, one per line.
    Returns the number of articles."""
    count = 0
    with atomic_path(output_file) as temporary, open(temporary, "w", encoding="utf-8") as out:
        for path in extracted_files(extracted_folder):
            for article in wiki_articles(path):
                out.write(article + "\n")
                count += 1
    logger.info("%d articles -> %s", count, output_file)
    return count


def run_wikiextractor(dump, extracted_folder, n_processes):
    """Runs WikiExtractor on the .xml or .xml.bz2 dump (100 MB output files)."""
    if importlib.util.find_spec("wikiextractor") is None:
        raise RuntimeError(f"extracting {dump} needs WikiExtractor: pip install wikiextractor "
                           f"(or extract it elsewhere into {extracted_folder} and pass "
                           f"--skip_wikiextractor 1)")
    command = [sys.executable, "-m", "wikiextractor.WikiExtractor", str(dump), "-b", "100M",
               "--processes", str(n_processes), "-o", str(extracted_folder)]
    logger.info("running %s", " ".join(command))
    subprocess.run(command, check=True)
