"""The Label Studio ML backend: config, formats, API client, state, the controllers and their service."""
