CREATE TABLE prices (sku text, price numeric);
