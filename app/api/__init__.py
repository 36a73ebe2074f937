"""The HTTP layer: schemas, validation, auth, the error envelope. It never touches torch modules."""
