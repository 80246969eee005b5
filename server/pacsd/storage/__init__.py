"""Where instance files live: atomic, durable writes under one storage root."""
