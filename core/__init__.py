"""The foundation every layer stands on: settings, the row and message contracts, Redis key
names and the store, signing and logs. It imports nothing of the layers above."""
