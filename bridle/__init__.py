"""bridle's client library (`bridle.client`): the HTTP service from Python, and the `bridle-client`
command. It imports nothing of the service's packages."""
