"""``wordnet``: the example sentences (and optionally the definitions) of WordNet 3.0, offline.

Source: the WordNet 3.0 database files ``data.noun``, ``data.verb``, ``data.adj``, ``data.adv``
(Princeton University; WordNet 3.0 licence, BSD-like: use, copy, modify and distribute with the
copyright notice). On Debian / Ubuntu ``apt-get install wordnet-base`` puts them in
``/usr/share/wordnet``; the ``dict/`` folder of the WordNet-3.0 tarball holds the same files.

Format (``wndb(5WN)``): lines starting with two spaces are the licence header; every other line
is one synset, ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``. The gloss holds a
definition and, in double quotes, example sentences: ``on the back of a horse; "he rode
horseback to town"; "managed to escape ahorse"``. Here

- an **example** is each quoted part (the text between a pair of ``"``; a quote left open runs
  to the end of the gloss), stripped: 48,345 in WordNet 3.0 (Debian's wordnet-base 3.0-37),
  48,230 distinct, 6.1 tokens on average (99 % have at most 17, the longest 52);
- a **definition** (option ``glosses: true``) is the gloss before its first ``"``, stripped of
  trailing ``;`` and spaces: 117,659 (one per synset); with them, 164,884 distinct sentences;
- the label ``y`` is the synset's lexicographer file (``lex_filenum``, 45 classes such as
  ``noun.animal`` or ``verb.motion``, names in ``metadata["class_names"]``).

Identical sentences are kept once (exact string match after stripping; files read in the order
noun, verb, adj, adv, the first occurrence's label kept), so no sentence is in two splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vae_tf.data.registry import register_dataset
from vae_tf.data.splits import DataSplits, SplitPlan
from vae_tf.data.text import TextOptions, random_parts, text_splits
from vae_tf.errors import DataError

DEFAULT_DIR = "/usr/share/wordnet"
DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
#: WordNet's lexicographer files (lexnames(5WN)), index = lex_filenum.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)
HOW_TO_GET = (
    "install them with apt-get install wordnet-base (Debian/Ubuntu, puts them in "
    "/usr/share/wordnet) or set data.path to a folder holding data.noun, data.verb, data.adj "
    "and data.adv (the dict/ folder of WordNet 3.0)"
)


def split_gloss(gloss: str) -> tuple[str, list[str]]:
    """``(definition, examples)`` of one gloss (module docstring)."""
    parts = gloss.split('"')
    definition = parts[0].strip().rstrip(";").strip()
    examples = [p.strip() for p in parts[1::2]]
    return definition, [e for e in examples if e]


def read_synsets(path: Path):
    """Yield ``(lex_filenum, gloss)`` of every synset line of one data file."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{str(path)!r} is not UTF-8 text ({exc.reason}); is it a WordNet data file?") from None
    except OSError as exc:
        raise DataError(f"could not read {str(path)!r} ({type(exc).__name__}: {exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("  "):
            continue  # blank, or the licence header
        head, sep, gloss = line.partition(" | ")
        fields = head.split(" ", 2)
        if not sep or len(fields) < 3 or not fields[0].isdigit() or not fields[1].isdigit() \
                or int(fields[1]) >= len(LEXNAMES):
            raise DataError(
                f"{str(path)!r} line {number} is not a WordNet 3.0 data line "
                "('offset lex_filenum ss_type ... | gloss'); point data.path at WordNet's dict folder"
            )
        yield int(fields[1]), gloss


def find_data_files(path) -> list[Path]:
    root = Path(DEFAULT_DIR if path is None else path).expanduser()
    if not root.is_dir():
        where = "not found at the default location" if path is None else "not a folder"
        raise DataError(f"WordNet 3.0 data files: {str(root)!r} is {where}; {HOW_TO_GET}")
    files = [root / name for name in DATA_FILES]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{str(root)!r} lacks the WordNet data file(s) {', '.join(missing)}; {HOW_TO_GET}")
    return files


@register_dataset("wordnet", modality="text")
def load_wordnet(
    plan: SplitPlan,
    *,
    path: str | None = None,
    glosses: bool = False,
    vocab_size: int | None = None,
    min_count: int = 1,
    max_length: int | None = None,
    long_sentences: str = "drop",
    lowercase: bool = True,
    split_punctuation: bool = True,
    symbol_clusters: bool = True,
) -> DataSplits:
    """WordNet 3.0's example sentences (module docstring), fully offline.

    Options:
        path: folder of the four data files (default ``/usr/share/wordnet``).
        glosses: also take the definitions (about 117k more sentences).
        vocab_size, min_count, max_length, long_sentences, lowercase, split_punctuation,
            symbol_clusters: as for
            every text data set (:class:`~vae_tf.data.text.TextOptions`); ``long_sentences``
            applies only when ``max_length`` is given (default: the longest sentence, nothing
            dropped).

    Returns:
        text :class:`DataSplits` (:mod:`vae_tf.data.text`), random split, ``y`` the
        lexicographer file (int64 0-44).
    """
    if not isinstance(glosses, (bool, np.bool_)):
        raise DataError(f"wordnet glosses must be true or false, got {glosses!r}")
    options = TextOptions(vocab_size, min_count, max_length, long_sentences, lowercase, split_punctuation,
                          symbol_clusters)
    options.check("wordnet")
    files = find_data_files(path)
    label: dict[str, int] = {}  # sentence -> lexicographer file of its first occurrence
    n_examples = n_definitions = 0
    for f in files:
        for lex, gloss in read_synsets(f):
            definition, examples = split_gloss(gloss)
            n_examples += len(examples)
            for example in examples:
                label.setdefault(example, lex)
            if glosses and definition:
                n_definitions += 1
                label.setdefault(definition, lex)
    if not label:
        raise DataError(f"no example sentences in the WordNet files under {str(files[0].parent)!r}; {HOW_TO_GET}")
    sentences = list(label)
    y = np.fromiter(label.values(), dtype=np.int64, count=len(label))
    return text_splits(
        "wordnet", plan, random_parts(plan, sentences, y), options,
        {"source": f"WordNet 3.0 data files in {str(files[0].parent)}",
         "license": "WordNet 3.0 licence (Princeton University)",
         "glosses": bool(glosses), "n_examples": n_examples, "n_definitions": n_definitions,
         "n_distinct": len(sentences), "deduplicated": "identical sentences kept once",
         "class_names": list(LEXNAMES), "test_split": "random"},
    )
