"""The gateway's routers.

Path parameters that name a corpus, domain, adapter or evaluation set are typed once, here: the
OpenAPI document then states the pattern names follow, and a malformed name is 400 on every route.
"""

from typing import Annotated

from fastapi import Path

from adapters_store.tenancy import FULL_NAME_PATTERN

Name = Annotated[str, Path(pattern=FULL_NAME_PATTERN.pattern,
                           description="a name (letters, digits, `.`, `_`, `-`), or `tenant:name` in full")]
