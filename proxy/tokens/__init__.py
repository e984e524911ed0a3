"""Obtaining tokens from identity providers: the model, the endpoint client, the grants
(OAuth2, custom requests) and the manager that caches and renews them."""
