CREATE TABLE public.case03_stock (sku text, qty int);
