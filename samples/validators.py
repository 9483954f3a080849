"""Example validator for `llmbatch --validate python:samples/validators.py:sentiment_matches_rating`."""

from llmbatch.validate.validator import extract_json


def sentiment_matches_rating(item, answer):
    """Reject a sentiment that contradicts the star rating the reviewer gave."""
    data = extract_json(answer)  # like --validate json: a ```json fence is fine
    if not isinstance(data, dict):
        return "answer is not a JSON object"  # a returned string is the reason it is invalid
    rating, sentiment = item.get("rating"), data.get("sentiment")
    if isinstance(rating, int | float):
        if sentiment == "positive" and rating <= 2:
            raise ValueError(f"sentiment is positive but the rating is {rating}")
        if sentiment == "negative" and rating >= 4:
            raise ValueError(f"sentiment is negative but the rating is {rating}")
    return True
