"""The authorization-code flow: a person consents once in a browser (or from a terminal),
and the refresh token it yields keeps the connector authorized unattended."""
