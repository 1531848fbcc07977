"""Training questions worth learning from: the checks a model-written question must pass, the
few-shot writer with several candidates and requests in flight, a teacher reached over HTTP, and
templates that give grammatical questions or none, on real documentation sentences (git-doc)."""

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest

from service.questions import WORKED_EXAMPLES, QuestionWriter, messages_for, question_problem
from service.teacher import Teacher, TeacherClient, TeacherError, check_url
from service.training_data import SourceChunk, template_questions

CHUNK = SourceChunk(7, "scheduler", "The scheduler runs every job at most once per minute. Jobs that fail "
                                    "are retried three times, then moved to the dead-letter queue.")


@pytest.mark.parametrize("question, answer, problem", [
    ("How many times is a failing job retried?", "three times", None),
    ("Where are jobs moved after they are retried?", "the dead-letter queue", None),
    ("How often does the scheduler run a job?", "once a day", "answer not in the chunk"),
    ("How many times is a failing job retried", "three times", "not a question"),
    ("Jobs that fail are retried how often?", "three times", "does not start with a question word"),
    ("What is If this value?", "three times", "not about the chunk"),
    ("What happens to a job afterwards?", "three times", "not about the chunk"),
    ("How often does the scheduler run every job?", "at", "answer says nothing"),
    ("Which word ends the name of failing jobs?", "ail", "answer not in the chunk"),  # inside "fail"
    ("Retried?", "three times", "does not start with a question word"),
    ("How many?", "three times", "too short or too long"),
    ("Are jobs retried three times?", "three times", "answer in the question"),
    ("What does the scheduler runs every job at most once per minute mean?", "once per minute",
     "answer in the question"),
    ("Is the scheduler runs every job at most once per minute?", "Jobs", "copies the chunk"),
    ("Which queue?", "The scheduler runs every job at most once per minute. Jobs that fail are retried",
     "too short or too long"),
])
def test_question_checks(question, answer, problem):
    assert question_problem(question, answer, CHUNK.text) == problem


def test_the_prompt_shows_worked_examples_then_the_chunk():
    messages = messages_for(CHUNK.text)
    assert [m["role"] for m in messages] == ["user", "assistant"] * len(WORKED_EXAMPLES) + ["user"]
    for (passage, question, answer), (user, assistant) in zip(WORKED_EXAMPLES, zip(messages[::2], messages[1::2])):
        assert passage in user["content"] and assistant["content"] == f"A: {answer}\nQ: {question}"
        assert question_problem(question, answer, passage) is None, "the worked examples pass the checks"
    assert CHUNK.text in messages[-1]["content"]


async def test_the_best_good_candidate_is_kept_with_requests_in_flight_and_progress():
    later = " Failed jobs are logged with the error that stopped them, for an operator to read."
    chunks = [SourceChunk(i, f"d{i}", CHUNK.text.replace("scheduler", f"scheduler{i}") + later) for i in range(9)]
    chunks.append(SourceChunk(9, "d9", "Nothing to see."))  # no prose sentence: asked about whole
    in_flight, most, asked = 0, 0, []

    async def write(messages: list[dict], n: int) -> list[str]:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        asked.append((messages[-1]["content"], n))
        for _ in range(5):  # the others get the loop meanwhile, as with a real request in flight
            await asyncio.sleep(0)
        in_flight -= 1
        if "Nothing to see" in messages[-1]["content"]:
            return ["Q: What is it?\nA: nothing here"] * n  # no good candidate: the chunk gives no model question
        if "Jobs that fail" not in messages[-1]["content"]:  # the first sentence gives no good candidate
            return ["Q: What is If this?\nA: once a day", "no question at all"][:n]
        return ["Q: What is If this?\nA: once a day",  # answer not in the chunk
                "Q: How many times is a failing job retried?\nA: three times, then moved to the dead-letter queue",
                "Q: How many times is a failing job retried?\nA: three times.",  # shorter answer ranks first
                "no question at all"][:n]

    progress = []
    writer = QuestionWriter(write, candidates=4, concurrency=3)
    pairs, stats = await writer.questions(chunks, max_examples=100, progress=lambda d, t: progress.append((d, t)))
    assert most == 3, "requests are in flight at once, no more than the concurrency"
    # one request per prose sentence of a chunk, in order until one gives a good pair (the second
    # here, so the third is never asked about), the whole chunk when it has none
    assert len(asked) == 9 * 2 + 1 and all(n == 4 for _, n in asked)
    assert not any("Failed jobs are logged" in content for content, _ in asked)
    assert sum("Jobs that fail are retried" in content and "scheduler0" not in content for content, _ in asked) == 9
    model = [qa for qa in pairs if qa.origin == "model"]
    assert [qa.chunk.chunk_id for qa in model] == list(range(9)), "in chunk order, one per chunk"
    assert {(qa.question, qa.answer) for qa in model} == {("How many times is a failing job retried?", "three times")}
    assert sorted(progress) == [(d, 10) for d in range(1, 11)]
    report = stats.report()
    assert report["chunks"] == 10 and report["writer_calls"] == 19
    assert report["kept_share"]["model"] == 0.9 and "template" not in report["kept_share"]
    assert report["sample"] == ["How many times is a failing job retried?"] * 5


def teacher_transport(seen: list[httpx.Request]):
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        chunk = json.loads(request.content)["messages"][-1]["content"]
        assert "dead-letter queue" in chunk
        return httpx.Response(200, json={"choices": [{"index": 0, "message": {"role": "assistant", "content": (
            "Q: How many times is a failing job retried?\nA: three times\n\n"
            "Q: Which company wrote the scheduler?\nA: Acme Corporation\n\n"  # not in the chunk: dropped
            "Q: Where are jobs moved after their retries?\nA: the dead-letter queue\n\n"
            "Q: How often does the scheduler run every job?\nA: once per minute")}}]})
    return httpx.MockTransport(handle)


async def test_a_teacher_gets_the_chunk_and_only_its_span_answers_are_kept():
    seen: list[httpx.Request] = []
    teacher = Teacher("https://teacher.example/v1/", "big-model", key="sk-secret")
    client = TeacherClient(teacher, transport=teacher_transport(seen))

    async def write(messages, n):
        return await client.chat(messages, n)

    pairs, stats = await QuestionWriter(write, origin="teacher", keep=3).questions([CHUNK], max_examples=10)
    await client.aclose()
    assert len(seen) == 1 and str(seen[0].url) == "https://teacher.example/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-secret"
    body = json.loads(seen[0].content)
    assert body["model"] == "big-model" and CHUNK.text in body["messages"][-1]["content"]
    assert sorted((qa.question, qa.answer) for qa in pairs if qa.origin == "teacher") == [
        ("How many times is a failing job retried?", "three times"),
        ("How often does the scheduler run every job?", "once per minute"),
        ("Where are jobs moved after their retries?", "the dead-letter queue")]
    assert stats.report()["kept_share"] == {"teacher": 1.0}
    assert "sk-secret" not in repr(teacher) and "sk-secret" not in json.dumps(teacher.public())


async def test_a_teacher_that_fails_says_so_without_its_key():
    failing = httpx.MockTransport(lambda request: httpx.Response(401, json={"error": {"message": "bad key"}}))
    client = TeacherClient(Teacher("http://127.0.0.1:9/v1", "m", key="sk-secret"), transport=failing)
    with pytest.raises(TeacherError, match="answered 401") as caught:
        await client.chat([{"role": "user", "content": "hi"}])
    assert "sk-secret" not in str(caught.value)
    await client.aclose()


@pytest.mark.parametrize("url", ["ftp://host/v1", "file:///etc/passwd", "teacher.example/v1", "http://",
                                 "https://user:pw@teacher.example/v1"])
def test_teacher_urls_are_http_without_credentials(url):
    with pytest.raises(ValueError):
        check_url(url)


# --- templates: grammatical questions or none, on real sentences ---

GIT_DOC = Path("/usr/share/doc/git-doc")
PAGES = ["git-var.html", "git-quiltimport.html", "git-merge-one-file.html", "git-pack-objects.html",
         "git-fetch.html", "git-rebase.html", "git-bisect.html", "git-diff.html", "git-clone.html",
         "git-config.html", "gitglossary.html", "git-maintenance.html", "git-worktree.html"]
# The subject of "What is/are X?" must be a noun phrase: a determiner and at least one more word,
# a capitalized name, or one code-like word; it never opens with, or holds, a subordinator,
# pronoun, demonstrative, quantifier, conjunction, preposition, adverb or verb, nor ends on a
# function word. This is the rule each template question of the real pages is checked against.
_DETERMINED = r"(?:the|a|an) [\w$'./-]+(?: [\w$'./-]+){0,3}"
_NAME = r"(?:[A-Z][a-z0-9]*(?:[-'][A-Za-z0-9]+)*|[A-Z0-9_]{2,})(?: (?:[A-Z][a-z0-9]*|[A-Z0-9_]{2,})){0,4}"
_CODE = r"(?:--?|\$)?[a-z0-9][\w.-]*"
GRAMMATICAL = re.compile(rf"^What (?:is|are|was|were) (?:{_DETERMINED}|{_NAME}|{_CODE})\?$")
NEVER_IN_SUBJECT = set("""if when while although because since unless it its this that these those there here which
who they them he she we you is are was were be been not and or but then also however""".split())


def real_sentences() -> list[SourceChunk]:
    from indexer.extract import extract

    if not GIT_DOC.is_dir():
        pytest.fail(f"{GIT_DOC} is missing: install Debian's git-doc package", pytrace=False)
    chunks = []
    for name in PAGES:
        (doc,) = extract("html", (GIT_DOC / name).read_bytes(), max_pdf_pages=10, timeout_s=60)
        chunks.append(SourceChunk(len(chunks), name, doc.text))
    return chunks


def test_templates_ask_only_grammatical_questions_of_real_documentation():
    questions = [qa for chunk in real_sentences() for qa in template_questions(chunk)]
    assert len(questions) >= 5, "the pages hold definitions; some must give questions"
    for qa in questions:
        assert GRAMMATICAL.match(qa.question), qa.question
        subject = qa.question.split(" ", 2)[2].rstrip("?").lower().split()
        assert not NEVER_IN_SUBJECT & set(subject), qa.question
        assert qa.answer.lower() in " ".join(qa.chunk.text.split()).lower()


@pytest.mark.parametrize("sentence", [
    "If this value is set, the default is the one given by the configuration.",
    "It is determined when the database is opened.",
    "This is a good way to double-check what rerere did.",
    "There is a limit to the number of packs.",
    "When the index is written, the result is a new tree.",
    "Each of them is a separate pack.",
    "In this mode the default is a full clone.",
    "Often the current branch head is an ancestor of the named commit.",
    "Supplying --prune-tags is a shorthand for providing the tag refspec.",
    "The content is the same as what is found there.",
])
def test_sentences_without_a_noun_phrase_subject_give_no_question(sentence):
    assert template_questions(SourceChunk(1, "d", sentence)) == []


def test_a_definition_gives_its_question():
    chunk = SourceChunk(1, "d", "DESCRIPTION\nThe index is a binary file that holds the staging area.\n"
                                "- --staged\n- --staged is a synonym of --cached.")
    assert [(qa.question, qa.answer) for qa in template_questions(chunk)] == [
        ("What is the index?", "a binary file that holds the staging area"),
        ("What is --staged?", "a synonym of --cached")]
