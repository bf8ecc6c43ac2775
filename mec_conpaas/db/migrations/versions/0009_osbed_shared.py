"""nodes on a shared instance network (nova's provider network): no own one

Revision ID: 0008_osbed_shared
Revises: 0007_image_agent_tls
"""
import sqlalchemy as sa
from alembic import op

revision = '0008_osbed_shared'
down_revision = '0007_image_agent_tls'


def upgrade():
    # A nova AP's instances are on neutron's provider network, which every
    # nova AP shares: it has no instance network of its own (NULL), and the
    # shared one is kept, not unique, in shared_network.
    with op.batch_alter_table('node_allocations', schema=None) as batch_op:
        batch_op.alter_column('instance_network', existing_type=sa.String(length=64),
                              nullable=True)
        batch_op.add_column(sa.Column('shared_network', sa.String(length=64),
                                      nullable=True))


def downgrade():
    # A shared node cannot be kept without an own network: its row goes (the
    # node records it again at its next registration).
    op.execute("DELETE FROM node_allocations WHERE instance_network IS NULL")
    with op.batch_alter_table('node_allocations', schema=None) as batch_op:
        batch_op.drop_column('shared_network')
        batch_op.alter_column('instance_network', existing_type=sa.String(length=64),
                              nullable=False)
