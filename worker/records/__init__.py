"""What haul remembers and writes down: haul.log, inputs.json, change memory, datum records."""
