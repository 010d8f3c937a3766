-- docker-compose.yml: the demo table, created when the Postgres volume is first initialised.
CREATE TABLE IF NOT EXISTS todos (
  id bigserial PRIMARY KEY,
  owner_id text NOT NULL,
  title text NOT NULL,
  done boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);
