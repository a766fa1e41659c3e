"""The gRPC adapter: proto ↔ domain translation, the status table, interceptors."""
