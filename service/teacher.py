"""The client of a teacher: any OpenAI-compatible chat completions endpoint that writes training
questions (a bigger model than the base one). One small client, httpx with an injectable transport
for tests. Its key goes out as the Bearer header only: it is never logged, stored or shown."""

from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx


class TeacherError(Exception):
    pass


@dataclass(frozen=True)
class Teacher:
    url: str  # the OpenAI base URL, as clients take it: requests go to {url}/chat/completions
    model: str
    key: str | None = field(default=None, repr=False)

    def public(self) -> dict:
        """What a job's parameters and a version's provenance record: never the key."""
        return {"url": self.url, "model": self.model}


def check_url(url: str) -> str:
    """The URL when it is an http(s) URL with a host and no credentials in it; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the teacher's url must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("the teacher's url must not hold credentials: give the key as `key`")
    return url.rstrip("/")


class TeacherClient:
    def __init__(self, teacher: Teacher, *, timeout_s: float = 300.0, connect_timeout_s: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.teacher = teacher
        headers = {"Authorization": f"Bearer {teacher.key}"} if teacher.key else {}
        self._http = httpx.AsyncClient(base_url=check_url(teacher.url), headers=headers, transport=transport,
                                       timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
                                       trust_env=False, follow_redirects=False)

    async def chat(self, messages: list[dict], n: int = 1, *, temperature: float = 0.7,
                   max_tokens: int = 400) -> list[str]:
        """The texts of the teacher's `n` sampled answers to `messages`."""
        payload = {"model": self.teacher.model, "messages": messages, "temperature": temperature,
                   "max_tokens": max_tokens}
        if n > 1:
            payload["n"] = n
        try:
            response = await self._http.post("/chat/completions", json=payload)
        except httpx.HTTPError as exc:
            raise TeacherError(f"the teacher at {self.teacher.url} could not be reached: "
                               f"{type(exc).__name__}") from None
        if response.status_code != 200:
            raise TeacherError(f"the teacher at {self.teacher.url} answered {response.status_code}: "
                               f"{response.text[:200]}")
        try:
            choices = response.json()["choices"]
            return [(c.get("message") or {}).get("content") or "" for c in choices]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TeacherError(f"the teacher at {self.teacher.url} did not answer as an OpenAI chat "
                               "completion") from None

    async def aclose(self) -> None:
        await self._http.aclose()
