"""Training examples are rendered with the gateway's own prompt code, so an adapter learns the prompt it is
served: a closed-book example's prompt is the chat template over what the planner sends without retrieval."""

import pytest
from transformers import AutoTokenizer

from service.rag.prompt import PromptBuilder
from service.training_data import QA, ExampleBuilder, SourceChunk

CHUNK = SourceChunk(7, "git-bisect.html", "git bisect finds the commit that introduced a bug by binary search.")
QUESTION = "Which command finds the commit that introduced a bug?"


@pytest.fixture(scope="module")
def prompts(base_model_dir):
    return PromptBuilder(AutoTokenizer.from_pretrained(base_model_dir), max_model_len=2048)


@pytest.mark.parametrize("system_prompt", [None, "Answer about git."])
def test_a_closed_book_prompt_is_the_prompt_a_completion_without_retrieval_gets(prompts, system_prompt):
    builder = ExampleBuilder(prompts, retriever=None, corpus="git-doc", system_prompt=system_prompt)
    example = builder.closed_book(QA(QUESTION, "git bisect", CHUNK, "model"))

    served, used = prompts.build_chat([{"role": "user", "content": QUESTION}], [], system_prompt, 64)
    assert used == []
    assert example["prompt"] == prompts.tokenizer.apply_chat_template(served, tokenize=False,
                                                                       add_generation_prompt=True)
    assert example["prompt"].count(QUESTION) == 1
    if system_prompt:
        assert system_prompt in example["prompt"]
    assert example["completion"] == "git bisect."
