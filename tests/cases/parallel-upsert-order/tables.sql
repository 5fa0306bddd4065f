CREATE TABLE sku_prices (sku text PRIMARY KEY, price numeric);
