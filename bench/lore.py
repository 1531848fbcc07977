"""The made-up corpus of bench/gateway.py: documents about invented institutions, so the base
model cannot know the answers, and two questions per document."""

import random

_SYL = ["zor", "bla", "ven", "tri", "qua", "mor", "eli", "ras", "thu", "nix", "pel", "dor", "ka", "lu",
        "fen", "gri", "sol", "wen", "ix", "bra"]
_KINDS = ["Institute", "Guild", "Observatory", "Library", "Foundry", "Academy", "Harbour", "Archive"]
_TRADES = ["glassblowing", "star charts", "tide clocks", "salt glazing", "kite mail", "moss ink",
           "copper bells", "lens grinding", "rope bridges", "weather kites"]
_TOWNS = ["Quenmoor", "Harlsby", "Otterwane", "Pellicove", "Drumhallow", "Wyxford", "Saltmere", "Brackenlea"]
_FILLER = ("Visitors remark on the {adj} courtyards, the long tables of the reading hall and the "
           "smell of {trade} that drifts through the corridors in the early morning. Its members "
           "meet every {day} to compare notes, settle disputes about {trade} and plan the next "
           "season's work. The records of those meetings fill {n} ledgers bound in {colour} leather.")
_ADJ = ["quiet", "crowded", "windswept", "lantern-lit", "overgrown", "tiled"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
_COLOURS = ["green", "red", "grey", "blue", "ochre", "black"]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYL) for _ in range(rng.randint(2, 3))).capitalize()


def corpus_and_questions(n_docs: int, seed: int = 7) -> tuple[list[dict], list[str]]:
    """n_docs made-up documents (about 2 chunks each) and two questions per document."""
    docs, qa = corpus_and_qa(n_docs, seed)
    return docs, [question for question, _, _ in qa]


def corpus_and_qa(n_docs: int, seed: int = 7) -> tuple[list[dict], list[tuple[str, list[str], str]]]:
    """The same documents, and each question with its expected answer and its document's id."""
    rng = random.Random(seed)
    docs, questions = [], []
    for i in range(n_docs):
        place = f"{_name(rng)} {rng.choice(_KINDS)}"
        founder = f"{_name(rng)} {_name(rng)}"
        year, town, trade = rng.randint(1500, 1990), rng.choice(_TOWNS), rng.choice(_TRADES)
        head, members = f"{_name(rng)} {_name(rng)}", rng.randint(12, 900)
        filler = " ".join(_FILLER.format(adj=rng.choice(_ADJ), trade=trade, day=rng.choice(_DAYS),
                                         n=rng.randint(3, 300), colour=rng.choice(_COLOURS))
                          for _ in range(4))
        text = (f"The {place} was founded in {year} by {founder} in the town of {town}. "
                f"It is known above all for {trade}. {filler} "
                f"Today the {place} is led by {head} and counts {members} members. "
                f"Its motto, carved above the door, reads 'By {trade}, for {town}'.")
        docs.append({"id": f"doc-{i:03d}", "text": text, "metadata": {"place": place}})
        questions += [(f"Who founded the {place}, and in which year?", [founder], docs[-1]["id"]),
                      (f"How many members does the {place} have, and who leads it?", [head], docs[-1]["id"])]
    rng.shuffle(questions)
    return docs, questions
