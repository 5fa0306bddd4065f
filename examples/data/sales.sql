-- The target table of the example project sales_project (schedules.d/sales.yaml).
-- reconcile never creates target tables: create it once in the target database.
CREATE TABLE IF NOT EXISTS public.sales (
    sale_id BIGINT PRIMARY KEY,
    sold_at TIMESTAMP WITH TIME ZONE NOT NULL,
    amount NUMERIC(12, 2) NOT NULL
);
