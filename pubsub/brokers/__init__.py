"""Broker backends; pick one with `pubsub.open_broker(url)`."""
