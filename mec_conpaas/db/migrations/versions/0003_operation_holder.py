"""one operation at a time per service: services.operation_id; instances may
outlive their service (instances.service_id nullable)

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'


def upgrade():
    # Plain ADD COLUMN / CREATE INDEX: a batch "move and copy" of services
    # would drop a table the instances' foreign key points at.
    op.add_column('services', sa.Column('operation_id', sa.String(length=36),
                                        nullable=True))
    op.create_index(op.f('ix_services_operation_id'), 'services', ['operation_id'],
                    unique=False)
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.alter_column('service_id', existing_type=sa.String(length=36),
                              nullable=True)
    # A store upgraded with operations still unfinished: each service is held
    # by its newest one, which the engine resumes and then releases.
    op.execute(
        "UPDATE services SET operation_id = ("
        " SELECT o.id FROM operations o WHERE o.service_id = services.id"
        " AND o.state IN ('PENDING', 'RUNNING')"
        " ORDER BY o.created_at DESC LIMIT 1)")


def downgrade():
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.alter_column('service_id', existing_type=sa.String(length=36),
                              nullable=False)
    op.drop_index(op.f('ix_services_operation_id'), table_name='services')
    op.drop_column('services', 'operation_id')
