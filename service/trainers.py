"""The reward protocols of trainers that call a URL: OpenRLHF's remote reward model and slime's
`remote_rm`, each answered on a path of its own and scored by the same Engine.

Both carry each sample's verifier and spec in its label (`{"verifier": ..., "spec": ...}`, a
JSON object or its text). Neither trainer can take a null, so an item assay could not judge
gets the `null_reward` query parameter's number (default 0), or, with `null_reward=raise`, the
request fails with HTTP 500 and the items' feedback (the trainer retries, then stops). Neither
sends an `Authorization` header, so where API keys are set the key may come as `?api_key=`.

- OpenRLHF (`--remote_rm_url http://HOST/v1/trainers/openrlhf`): it POSTs
  `{"query": [prompt + response, decoded with special tokens], "prompts": [...],
  "labels": [...]}` and reads `rewards`, then `scores` (default: rewards) and `extra_logs`.
  The completion is the query after its prompt; a trailing end-of-sequence marker of the
  common chat templates is dropped.
- slime (`--rm-type remote_rm --rm-url http://HOST/v1/trainers/slime`): one POST per sample,
  `{"prompt": ..., "response": ..., "label": ...}`; the reward is the answer's JSON body, a
  number.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from assay.clients.schema import ScoreItem, ScoreRequest, ScoreResult, item_from_label

# Text forms of the end-of-sequence tokens of common chat templates (ChatML, Llama 2 and 3,
# Gemma, DeepSeek): OpenRLHF decodes queries with special tokens kept.
EOS_MARKERS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "</s>",
    "<eos>",
    "<end_of_turn>",
    "<｜end▁of▁sentence｜>",
)


class OpenRLHFRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    query: list[str] = Field(description="Prompt and response, as the trainer decoded them.")
    prompts: list[str] | None = Field(default=None, description="The prompts, one per query.")
    labels: list[Any] | None = Field(
        default=None, description="Per query: `{verifier, spec, extract}`, or its JSON text."
    )


class OpenRLHFResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]] = Field(
        description="Per query: `assay_passed` (1/0), `assay_unjudged` (1/0), `assay_elapsed_ms`."
    )


class SlimeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str | list[Any] | None = None
    response: str
    label: Any = Field(default=None, description="`{verifier, spec, extract}`, or its JSON text.")


def response_of(query: str, prompt: str | None) -> str:
    """The model's part of an OpenRLHF query: after the prompt, without a trailing EOS."""
    text = query
    if prompt:
        at = query.find(prompt)
        if at >= 0:
            text = query[at + len(prompt) :]
    stripped = True
    while stripped:
        stripped = False
        text = text.rstrip()
        for marker in EOS_MARKERS:
            if text.endswith(marker):
                text, stripped = text[: -len(marker)], True
    return text


def _policy(value: str) -> float | None:
    """`null_reward`: a finite number, or "raise" (None here)."""
    if value == "raise":
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise HTTPException(422, f"null_reward must be a number or 'raise', not {value!r}")
    return number


class _Gone(Exception):
    """The trainer's connection closed before its rewards were ready."""


Scorer = Callable[[Sequence[ScoreItem], Request], Awaitable[list[ScoreResult] | None]]


def trainer_router(
    admit: Callable[[ScoreRequest, str], None],
    score: Scorer,
    route_class: type[APIRoute] = APIRoute,
) -> APIRouter:
    """The trainer protocols' routes, sharing the app's admission and scoring: `score`
    gives the items' results, or `None` once the client has gone away (its work cancelled).
    API keys are checked by the app's middleware, which also takes `?api_key=` on these
    paths."""
    router = APIRouter(prefix="/v1/trainers", tags=["trainers"], route_class=route_class)

    async def judge(
        prepared: Sequence[ScoreItem | ScoreResult],
        endpoint: str,
        null_reward: str,
        request: Request,
    ) -> tuple[list[ScoreResult], list[float]]:
        fallback = _policy(null_reward)
        items = [p for p in prepared if isinstance(p, ScoreItem)]
        admit(ScoreRequest(items=items), endpoint)
        done = await score(items, request) if items else []
        if done is None:  # the trainer went away (its timeout): its items' work stopped
            raise _Gone()
        scored = iter(done)
        results = [next(scored) if isinstance(p, ScoreItem) else p for p in prepared]
        unjudged = [r for r in results if r.reward is None]
        if unjudged and fallback is None:
            shown = "; ".join(f"{r.status}: {r.feedback}" for r in unjudged[:5])
            raise HTTPException(500, f"{len(unjudged)} items could not be judged: {shown}")
        rewards = [r.reward if r.reward is not None else fallback for r in results]
        return results, [float(r) for r in rewards if r is not None]

    @router.post(
        "/openrlhf",
        response_model=OpenRLHFResponse,
        summary="OpenRLHF's remote reward model protocol (--remote_rm_url).",
    )
    async def openrlhf(
        body: OpenRLHFRequest, request: Request, null_reward: str = Query(default="0")
    ) -> OpenRLHFResponse | Response:
        n = len(body.query)
        prompts: list[str | None] = list(body.prompts) if body.prompts is not None else [None] * n
        labels = body.labels if body.labels is not None else [None] * n
        if len(prompts) != n or len(labels) != n:
            raise HTTPException(422, "query, prompts and labels must be lists of one length")
        prepared = [
            item_from_label(response_of(q, p), label)
            for q, p, label in zip(body.query, prompts, labels, strict=True)
        ]
        try:
            results, rewards = await judge(prepared, "openrlhf", null_reward, request)
        except _Gone:
            return Response(status_code=499)
        return OpenRLHFResponse(
            rewards=rewards,
            scores=rewards,
            extra_logs={
                "assay_passed": [float(r.status == "passed") for r in results],
                "assay_unjudged": [float(r.reward is None) for r in results],
                "assay_elapsed_ms": [r.elapsed_ms for r in results],
            },
        )

    @router.post(
        "/slime",
        response_model=float,
        summary="slime's remote_rm protocol (--rm-type remote_rm --rm-url): the reward.",
    )
    async def slime(
        body: SlimeRequest, request: Request, null_reward: str = Query(default="0")
    ) -> float | Response:
        prepared = [item_from_label(body.response, body.label)]
        try:
            _, rewards = await judge(prepared, "slime", null_reward, request)
        except _Gone:
            return Response(status_code=499)
        return rewards[0]

    return router


__all__ = ["EOS_MARKERS", "response_of", "trainer_router"]
