"""The review classification of samples/review.schema.json as a pydantic model, for
`--schema python:review_model:Review` (run from samples/, or give the file:
`--schema python:samples/review_model.py:Review`)."""

from typing import Literal

from pydantic import BaseModel, Field


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    score: int = Field(ge=1, le=5, description="1 (bad) to 5 (great)")
    # Optional as strict mode can say it: null when the review names no topic.
    topics: list[str] | None = None
