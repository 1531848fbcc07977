"""The fields of an OpenAI completion request that graft itself reads, typed and checked before
planning. Every other field passes through to the engine untouched: the engine judges those.
These models are also the completion routes' request schemas in the OpenAPI document."""

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from service.errors import invalid_from
from service.http_body import integral_numbers_as_ints
from service.rag.planner import RetrievalOverride


class ContentPart(BaseModel):
    # A text part's `text` is a string (the validator below), in the schema too.
    model_config = ConfigDict(extra="allow", json_schema_extra={
        "if": {"properties": {"type": {"const": "text"}}},
        "then": {"properties": {"text": {"type": "string"}}, "required": ["text"]}})
    type: StrictStr
    text: StrictStr | None = None  # joined into the prompt and the retrieval query

    @model_validator(mode="after")
    def _text_part_has_text(self):
        if self.type == "text" and self.text is None:
            raise ValueError("a content part of type 'text' needs a string `text`")
        return self


def _as_parts(content: Any) -> Any:
    # A string is one text part: then a bad part's error names it (`content[1].text`) rather than
    # listing why it is neither a string nor a list.
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None or isinstance(content, list):
        return content
    raise ValueError("content must be a string or a list of content parts")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Annotated[list[ContentPart] | None,
                       BeforeValidator(_as_parts, json_schema_input_type=str | list[ContentPart] | None)] = None


def _retrieval(value: Any) -> Any:
    """`retrieval` as the planner reads it (false, true, or an override object), checked here
    too so a bad one is refused whatever `model` names; passed on unchanged."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, dict):
        RetrievalOverride.model_validate(value, strict=True)
        return value
    raise ValueError("`retrieval` must be false or an object {k, mode, corpora, min_score}")


# graft's own request field: the domain's retrieval for this request, or false for none.
Retrieval = Annotated[Any, PlainValidator(_retrieval, json_schema_input_type=RetrievalOverride | bool | None)]


class _Completion(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: StrictStr = Field(min_length=1, description="a domain name or the base model")
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    stream: StrictBool | None = None
    retrieval: Retrieval = Field(
        default=None, description="graft's own: the domain's retrieval for this request, or false for none")


class ChatCompletionRequest(_Completion):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Completion):
    prompt: StrictStr = Field(min_length=1)


def validate_completion(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body of a "chat" or "text" completion request, its integral numbers read as integers
    (`"max_tokens": 64.0` is 64); raise Invalid naming its first bad field."""
    model = ChatCompletionRequest if kind == "chat" else CompletionRequest
    body = integral_numbers_as_ints(body)
    try:
        model.model_validate(body)
    except ValidationError as exc:
        raise invalid_from(exc) from exc
    return body
