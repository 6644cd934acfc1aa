DROP TABLE provider_limits;
