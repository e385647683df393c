"""The sections' common base: a strict, closed pydantic model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    # Strict: YAML and widgets must not coerce silently (true is not 1, "5" is not 5); an int
    # is still accepted where a float is expected. inf/nan are never a meaningful setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True,
                              allow_inf_nan=False)
