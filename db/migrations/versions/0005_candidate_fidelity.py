"""Each candidate's subject fidelity (DINO similarity to the instance set) and prompt fidelity
(CLIP-T), stored when it is scored, so the Rate page can order by them.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("candidates") as batch_op:
        batch_op.add_column(sa.Column("dino", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("clip_t", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("candidates") as batch_op:
        batch_op.drop_column("clip_t")
        batch_op.drop_column("dino")
