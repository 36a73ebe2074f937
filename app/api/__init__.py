"""The HTTP layer: schemas, validation, auth, the error envelope, the routes. Validating a request loads no torch
(``tests/test_layers.py``); the routes reach the model only through the services."""
