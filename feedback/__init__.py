"""Votes, scores, selection and Oxen versioning: what turns ratings into training data."""
