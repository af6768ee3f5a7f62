"""The reference: training set up the way Hugging Face's ``run_qa.py`` example does it.

Every window is padded to ``max_length`` (384), batches come from a random sampler through
``default_data_collator``, and the Trainer builds its default AdamW with one learning rate for all
weights. Written here from the description of that example, not copied from it, and kept apart from
medqa's code so the comparison measures two independent implementations.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase, TrainingArguments


def reference_train_features(
    tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], max_length: int, stride: int
) -> dict[str, list[Any]]:
    """Columns of padded training windows labelled with answer token positions.

    A window whose context part does not hold the whole (first) answer, and a question without one,
    is labelled with the [CLS] position. Otherwise the start label is the last context token that
    begins at or before the answer's first character, and the end label the first context token that
    ends at or after its last character.
    """
    enc = tokenizer(
        [r["question"].lstrip() for r in rows],
        [r["context"] for r in rows],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        padding="max_length",
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    starts, ends = [], []
    for window, source in enumerate(enc.pop("overflow_to_sample_mapping")):
        ids, offsets = enc["input_ids"][window], enc["offset_mapping"][window]
        cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        context = [t for t, seq in enumerate(enc.sequence_ids(window)) if seq == 1]
        answers = rows[source]["answers"]
        start = end = cls
        if answers and context:
            first = answers[0]["answer_start"]
            last = first + len(answers[0]["text"])
            if offsets[context[0]][0] <= first and offsets[context[-1]][1] >= last:
                start = max(t for t in context if offsets[t][0] <= first)
                end = min(t for t in context if offsets[t][1] >= last)
        starts.append(start)
        ends.append(end)
    enc.pop("offset_mapping")
    return {
        **{key: list(values) for key, values in enc.items()},
        "start_positions": starts,
        "end_positions": ends,
    }


def reference_training_args(
    output_dir: str,
    batch_size: int,
    learning_rate: float,
    epochs: float,
    weight_decay: float,
    warmup: float,
    seed: int,
    precision: str,
    use_cpu: bool,
) -> TrainingArguments:
    """Plain Trainer arguments: the same recipe as medqa's, with the Trainer's defaults for the rest
    (random sampler, one learning rate, no length grouping)."""
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        weight_decay=weight_decay,
        warmup_steps=warmup,
        lr_scheduler_type="linear",
        seed=seed,
        data_seed=seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=use_cpu,
        logging_strategy="epoch",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
