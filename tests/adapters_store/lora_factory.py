"""Make real PEFT LoRA adapters for the test base model, optionally taught one fact.

Measured on SmolLM2-135M (float32, 2 shared CPU cores), rank 8, lr 5e-3, one chat-formatted
example "What is the secret code of graft?" -> "The secret code of graft is PURPLE-OTTER-42.":
greedy decoding after the chat-template prompt reproduced the answer after 4-5 steps on
q_proj+v_proj and 3-4 steps on all seven projections. Use steps=8 on all seven projections
for margin (it also survives a system prompt with retrieved passages); make_lora then takes
about 6 s on an idle machine, several times that when the cores are busy.
"""

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.protocol import ALL_PROJECTIONS


def make_lora(
    base_model_dir: Path,
    out_dir: Path,
    *,
    rank: int = 8,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
    train_text: str | None = None,
    steps: int = 0,
    train_prompt: str | None = None,
    lr: float = 5e-3,
) -> Path:
    """Save a PEFT LoRA (adapter_config.json + adapter_model.safetensors) into out_dir.

    With train_text and steps > 0, runs that many AdamW steps of causal-LM loss. With
    train_prompt as well, the example is the chat-template rendering of
    [user: train_prompt, assistant: train_text] and only the answer tokens are scored, so
    that greedy decoding after the same chat prompt says train_text.
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    training = bool(train_text) and steps > 0
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=list(target_modules),
        # PEFT starts lora_B at zero; an untrained adapter would then be all-zero deltas.
        init_lora_weights=True if training else False,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if training:
        _train(model, base_model_dir, train_text, train_prompt, steps, lr)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of the chat-template prompt that ends where the assistant answer starts."""
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _train(model, base_model_dir: Path, text: str, prompt: str | None, steps: int, lr: float):
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    if prompt is None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        labels = list(ids)
    else:
        prefix = chat_prompt_ids(tokenizer, prompt)
        answer = tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ids = prefix + answer
        labels = [-100] * len(prefix) + answer
    input_ids = torch.tensor([ids])
    label_ids = torch.tensor([labels])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, labels=label_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def greedy_answer(model, tokenizer, prompt: str, max_new_tokens: int = 24) -> str:
    """Greedy (temperature 0) continuation after the chat-template prompt."""
    ids = torch.tensor([chat_prompt_ids(tokenizer, prompt)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def make_code_loras(base_model_dir: Path, out_root: Path, prompt: str, answers: dict[str, str],
                    marks: dict[str, str], steps: int = 8, max_rounds: int = 4) -> dict[str, Path]:
    """One adapter per name (all seven projections, rank 8), each taught to answer `prompt` with its
    answer; trained until greedy decoding says the name's mark (at most `max_rounds` x `steps` steps).
    The base model is loaded once: about 11 s per adapter on a 2-core machine with a busy engine beside."""
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    folders = {}
    # Beside a busy engine, torch's two spinning OpenMP threads ran about ten times slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed, (name, answer) in enumerate(answers.items()):
            folders[name] = _code_lora(base, tokenizer, base_model_dir, out_root / name.replace("@", "-v"), seed,
                                       prompt, answer, marks[name], steps, max_rounds)
    finally:
        torch.set_num_threads(threads)
    return folders


def _code_lora(base, tokenizer, base_model_dir: Path, folder: Path, seed: int, prompt: str, answer: str, mark: str,
               steps: int, max_rounds: int) -> Path:
    import copy

    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=list(ALL_PROJECTIONS))
    model = get_peft_model(copy.deepcopy(base), config)
    for _ in range(max_rounds):
        _train(model, base_model_dir, answer, prompt, steps, 5e-3)
        said = greedy_answer(model, tokenizer, prompt)
        if mark in said:
            model.save_pretrained(folder, safe_serialization=True)
            return folder
    raise AssertionError(f"{folder.name} did not learn {mark!r}: it says {said!r}")
