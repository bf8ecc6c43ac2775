from alembic import context

from mec_conpaas.db import models

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection,
                      target_metadata=models.Base.metadata,
                      render_as_batch=True)
    context.run_migrations()
