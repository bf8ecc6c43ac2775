"""services get a QoS spec; instances their auto-scaled size

Revision ID: 0005_enorm_qos
Revises: 0005_join_alloc
"""
import sqlalchemy as sa
from alembic import op

revision = '0005_enorm_qos'
down_revision = '0005_join_alloc'

SERVICE_COLUMNS = (('priority', sa.Integer()), ('latency_objective_ms', sa.Float()),
                   ('max_users', sa.Integer()), ('min_instances', sa.Integer()),
                   ('max_instances', sa.Integer()))
INSTANCE_COLUMNS = (('cpus', sa.Float()), ('memory_mb', sa.Integer()))


def upgrade():
    # NULL is each field's default (policies/qos.py): existing services
    # keep behaving as before.
    with op.batch_alter_table('services', schema=None) as batch_op:
        for name, kind in SERVICE_COLUMNS:
            batch_op.add_column(sa.Column(name, kind, nullable=True))
    with op.batch_alter_table('instances', schema=None) as batch_op:
        for name, kind in INSTANCE_COLUMNS:
            batch_op.add_column(sa.Column(name, kind, nullable=True))


def downgrade():
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+, every other
    # backend): a batch copy of ``services`` would drop a table instances
    # refer to.
    for name, _ in INSTANCE_COLUMNS:
        op.drop_column('instances', name)
    for name, _ in SERVICE_COLUMNS:
        op.drop_column('services', name)
