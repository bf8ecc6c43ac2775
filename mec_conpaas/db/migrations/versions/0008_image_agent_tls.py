"""nodes whose agent serves HTTPS: the name its certificate is checked for

Revision ID: 0007_image_agent_tls
Revises: 0006_mob_users
"""
import sqlalchemy as sa
from alembic import op

revision = '0007_image_agent_tls'
down_revision = '0006_mob_users'


def upgrade():
    # NULL: plain HTTP, as every node agent before it.
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('agent_server_name', sa.String(length=128),
                                      nullable=True))


def downgrade():
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('agent_server_name')
