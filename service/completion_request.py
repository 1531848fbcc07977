"""The fields of an OpenAI completion request that graft itself reads, typed and checked before
planning. Every other field passes through to the engine untouched: the engine judges those."""

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from service.errors import invalid_from


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
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
    content: Annotated[list[ContentPart] | None, BeforeValidator(_as_parts)] = None


class _Completion(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: StrictStr = Field(min_length=1, description="a domain name or the base model")
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    stream: StrictBool | None = None


class ChatCompletionRequest(_Completion):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Completion):
    prompt: StrictStr = Field(min_length=1)


def validate_completion(kind: str, body: dict[str, Any]) -> None:
    """Raise Invalid naming the first bad field of a "chat" or "text" completion request."""
    model = ChatCompletionRequest if kind == "chat" else CompletionRequest
    try:
        model.model_validate(body)
    except ValidationError as exc:
        raise invalid_from(exc) from exc
